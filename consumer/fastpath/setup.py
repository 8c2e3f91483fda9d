"""Builds the C extension ``iot_fastpath`` (pyproject.toml holds the metadata)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "iot_fastpath",
            # the CPython binding, and the pure-C units it uses (tests/driver.c drives those alone)
            sources=["iot_fastpath.c", "lib/crc32c.c", "lib/reading.c", "lib/record_batch.c", "lib/summary.c"],
            include_dirs=["lib"],
            extra_compile_args=[
                "-O2",
                "-std=c11",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
                "-Wno-missing-field-initializers",
                "-Wno-cast-function-type",
            ],
        )
    ],
)
