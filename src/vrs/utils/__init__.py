"""Small helpers shared by the apps: config printing, loggers, callbacks."""
