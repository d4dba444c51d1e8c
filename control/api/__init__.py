"""The REST API: thin aiohttp handlers, bearer-token scopes, the OpenAPI document."""
