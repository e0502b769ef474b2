"""sparsify_runner: the data plane that sparsifies one experiment.

Importing this package (and ``spec``, ``contract``, ``errors``) must stay free of torch,
onnx and boto3: the operator imports the experiment spec from here.
"""

__version__ = "0.1.0"
