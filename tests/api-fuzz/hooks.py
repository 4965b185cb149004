"""Schemathesis hooks for the Sluice API fuzz: bodies of the binary media
types the document names (a plugin's `application/wasm`)."""

import schemathesis


@schemathesis.serializer("application/wasm")
def wasm(ctx, value):
    # The schema says "a string of the component's bytes"; send its UTF-8.
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")
