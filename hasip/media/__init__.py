"""Media relay control: rtpengine's ng protocol (bencode codec and the
sans-IO request table), its instances with weights and health, and the
asyncio client the routing script's media hook calls."""
