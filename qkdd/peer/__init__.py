"""Classical channel between the two qkdd ends of a link: framing, authenticated handshake, records,
sessions and the connector that keeps one session per link alive."""
