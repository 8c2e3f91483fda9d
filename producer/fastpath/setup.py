"""Builds the C extension ``iot_producer_fastpath`` (pyproject.toml holds the metadata)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "iot_producer_fastpath",
            sources=["iot_producer_fastpath.c"],
            extra_compile_args=[
                "-O2",
                "-std=c11",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
                "-Wno-missing-field-initializers",
            ],
        )
    ],
)
