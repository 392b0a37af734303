"""The HTTP server: firmware downloads for devices, the API and the console."""
