"""Small helpers with no SIP in them."""
