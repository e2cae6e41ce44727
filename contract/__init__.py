"""The contract between the infrastructure and the worker: shared types and limits, the call-metadata schema, the
merge rule, model specs and the worker's deployment variables. Imports only pydantic, phonenumbers and the standard
library: ``infra`` and ``worker`` both import it, and the worker image ships it beside ``worker/``.
"""
