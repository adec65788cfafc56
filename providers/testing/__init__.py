"""Loopback doubles of the AI services, speaking their real wire protocols.

They run on 127.0.0.1 in a background thread so the providers' real SDKs are exercised in
tests and local runs without any outside network or credentials.
"""
