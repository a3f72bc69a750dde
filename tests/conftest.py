"""Shared pytest configuration; fixtures live in tests/infra modules listed here."""

pytest_plugins: list[str] = [
    # Each infrastructure module that defines fixtures adds itself here.
    "tests.infra.kafka",
    "tests.infra.netns",
    "tests.infra.captures",
]
