"""I/O for sapg: servers, the outbound HTTP executor and the command line."""
