"""What a graded notebook becomes for people and other programs, each a function of the reports alone.

- `text`: the terminal table and the JSON report (the schema other tools read).
- `feedback`: the student's HTML page, with a picture per graded tensor.
- `junit`: JUnit XML for CI systems (GitHub Classroom, GitLab, Jenkins).
- `class_report`: a class's score distribution, root mistakes and shared wrong answers (`class.json`,
  `class.html`).
- `class_files`: a class's gradebook (`grades.csv`, `canvas.csv`), Markdown feedback and summary.
- `files`: writing any of these in one step, so that a killed batch leaves no half-written file.

Pages are rendered from the Jinja2 templates in `templates/`.
"""
