# nbgrader settings for the notebooks in solutions/ (nbgrader "source" notebooks).
#
# `python tools/release.py` runs `nbgrader generate_assignment` with this file to make assignments/;
# an nbgrader course that uses these notebooks copies it into its own course directory.
c = get_config()  # noqa: F821 -- provided by nbgrader when it loads this file

# Students start from the `d_x = None` stubs above each solution region; nbgrader's default stub would
# add `raise NotImplementedError()`, which stops the notebook at the first exercise left undone.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
