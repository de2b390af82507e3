"""codeyard: autonomous coding agents as services over NATS JetStream."""

__version__ = "0.1.0"
