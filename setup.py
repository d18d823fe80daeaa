"""The one thing pyproject.toml does not say: the optional C extension.

procdevices.devices._mqloop is the monitored queue's loop in C. It is optional: where no C
compiler (or no Python headers) is found, the build warns and goes on, and the monitored
queue runs its Python loop (procdevices/devices/monitoredqueuedevice.py). It needs neither
zmq.h nor a libzmq to link with: it finds the libzmq pyzmq loaded when it is imported.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "procdevices.devices._mqloop",
            sources=["procdevices/devices/_mqloop.c"],
            optional=True,
        )
    ]
)
