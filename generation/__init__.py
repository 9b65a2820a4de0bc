"""Language-model copy generation (prompting, linting, de-duplication, ranking).

Empty until the "LLM variant generation" issue lands; `service/` will call one entry point here, and
this package will never import flask, sqlmodel or `service`.
"""
