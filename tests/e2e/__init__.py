"""End-to-end tests: the B2BUA as a subprocess, sipp as caller and gateways, all on 127.0.0.x."""
