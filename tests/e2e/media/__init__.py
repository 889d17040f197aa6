"""Media tests: real RTP peers (peer.py), the tone analyser (tones.py), audio through the B2BUA."""
