"""Starts the whole system on one machine: Redis and the four services as separate processes.

`make run` uses it to bring up the chat; the end-to-end tests use it to bring up a private copy on free ports.
"""
