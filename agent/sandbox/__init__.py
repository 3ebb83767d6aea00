"""The l7gate sandbox: a Kubernetes-like cluster on one machine, out of network namespaces.

Modules: `topology` (schema, validated loader, endpoints file), `yamlpos` (YAML with line
numbers), `netns` (iproute2 builder), `state` (state.json, process identity), `api`
(`Sandbox`, `running`, `down`: the Python API for tests and benchmarks), `cli`
(`l7gate sandbox ...`), `echo` (the HTTP echo origin). Importing this package does no I/O.
"""
