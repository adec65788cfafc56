"""Reading what /metrics serves, for tests (unit and production path alike)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

#: Every sample of one scrape, keyed by (sample name, its labels).
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample_value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 when the scrape has none (a labelled counter not yet moved)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
