"""The etsi014 driver: the device is a vendor KME that distils keys itself and serves ETSI GS QKD 014.

    settings.py   the `[links.etsi014]` section and the vendor presets (idq, toshiba, qlabs)
    client.py     the ETSI 014 client (mTLS, httpx on trio) and the strict parsing of its answers
    device.py     Etsi014Device: enc_keys at the master end, dec_keys by key ID at the slave end
The link engine of such a device is qkdd.link.key_relay (key IDs over the classical channel).
"""
