"""Builds the C extension ``iot_fastpath`` (pyproject.toml holds the metadata)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "iot_fastpath",
            sources=["iot_fastpath.c"],
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
