"""The workspace: YAML files loaded into models with file:line errors, the sandboxed
Jinja environment, the JSON Schema and the `init` templates."""
