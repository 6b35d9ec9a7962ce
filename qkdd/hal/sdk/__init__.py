"""The sdk driver: a vendor's C library implementing native/include/qkd_device.h, loaded at run time.

    abi.py       the only code that touches the library (cffi ABI mode): version check, sizes, codes
    settings.py  the `[links.sdk]` section (sdk_library, device_config, max_records_per_frame)
    device.py    SdkDevice: frames read in a trio worker thread; reopens after errors
"""
