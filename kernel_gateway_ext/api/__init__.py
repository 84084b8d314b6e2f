"""HTTP and websocket dialects: thin handlers over the kernel store."""
