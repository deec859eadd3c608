async def test_the_hub_fixture_serves_real_http(hub):
    status, body, _ = await hub.call("GET", "/healthz")
    assert status == 200 and body["status"] == "ok"
