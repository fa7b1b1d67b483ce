"""Plain logic shared by the Lambdas, the training container and the CLI.

Nothing in this package reads an event shape or knows whether it runs on AWS or locally:
callers pass plain data and, where AWS is needed, the boto3 clients to use.
"""
