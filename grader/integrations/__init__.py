"""The grader inside other tools. Each module adapts `grader.grade` (one notebook) or `grader.batch` (a
class) to one tool and holds nothing the pipeline needs:

- `selfcheck`: `from grader import check` in a student's own notebook (Jupyter, Colab);
- `pytest_plugin`: `pytest --grade NOTEBOOK`, every graded variable a test;
- `gradebook`: scores into an nbgrader course's gradebook;
- `gradescope`: the Gradescope autograder (its package and its run);
- `classroom`: GitHub Classroom's autograding workflow;
- `cluster`: a class's submissions as Dask tasks.

nbgrader and Dask are optional extras, imported where they are used.
"""
