"""The MQTT control plane: the v1 wire protocol, a publisher and the worker's listener."""
