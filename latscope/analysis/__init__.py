"""The analysis of a session: its report in a terminal and as HTML with plots (the SQL is in
``plugins/module_utils/analysis_sql.py``)."""
