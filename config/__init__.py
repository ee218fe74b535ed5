"""Configuration files shipped with pacsguard.

- ``default.yaml``: the embedded default, used when no config file is given or found;
  runs out of the box in ``./pacsguard-data``.
- ``example.yaml``: an annotated example that uses every option.
- ``pacsguard.schema.json``: the JSON Schema (``pacsguard config schema`` prints it).
"""
