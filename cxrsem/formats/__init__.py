"""File contracts between the stages: one module per format (schema, rules, writer, reader).

Stages talk to each other only through these files; every reader accepts every schema version
written so far.  See ``docs/formats.md`` for the field-by-field description.
"""
