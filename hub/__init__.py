"""The aiohttp server: routes, transports, auth. Start it with ``synchub serve`` or
:func:`hub.app.create_app`."""
