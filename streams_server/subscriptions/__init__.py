"""Subscriptions (sections 6 and 7): durable cursors that wake workers by webhook or pull-wake."""
