"""Alert delivery helpers: the Alertmanager webhook receiver behind ``labotel alerts-webhook``."""
