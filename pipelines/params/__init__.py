"""The sections of ``params.yaml`` that the pipeline stages own, one module per concern;
``pipelines.config`` assembles them into ``Params``, and ``schema`` writes the file's JSON Schema."""
