"""What codeyard's processes tell operators: Prometheus metrics (`metrics`, served by
`exporter`), structured logs (`log_format`) carrying the run and task being worked on
(`context`), and JetStream consumer gauges read by the coordinator (`consumer_gauges`)."""
