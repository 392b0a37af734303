"""Device side: the OTA SDK a device runs, and a fleet simulator built on it."""
