"""The one package every service may import: Redis naming, event append, gRPC server plumbing, model location.

Nothing here knows about any one service's internals.
"""
