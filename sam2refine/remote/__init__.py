"""The engine over HTTP: the wire format, the server and its jobs, the torch-free client."""
