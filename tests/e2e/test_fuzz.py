"""A seeded fuzz sweep in the suite: a few hundred mutated objects of every kind the
independent sweep found faults with, through the folder and the network, against the real
service and a real dcmtk sink. (The long sweep: ``python -m tests.fuzz --count 2000``.)"""

from __future__ import annotations

import collections

import pytest

from tests.fuzz.mutations import KINDS, mutations
from tests.fuzz.sweep import run_sweep

pytestmark = pytest.mark.e2e

RSS_BOUND_MIB = 600


@pytest.mark.timeout(600)
def test_every_mutated_object_ends_delivered_or_quarantined_with_a_reason(tmp_path):
    muts = mutations(seed=20261202, count=240)
    kinds = collections.Counter(m.kind for m in muts)
    assert set(kinds) == set(KINDS), kinds  # every class of fault is in the sweep

    report = run_sweep(tmp_path, muts, network_share=0.3, settle_timeout=240)
    print(report.summary())

    assert report.acknowledged_network > 20 and report.sent_folder > 100
    jobs = report.jobs
    assert jobs["received"] == jobs["routed"] == 0  # nothing left in flight
    assert jobs["done"] + jobs["quarantined"] == report.sent_folder + report.acknowledged_network
    assert jobs["quarantined"] > 50 and jobs["done"] > 10  # (the mutations do both)
    assert report.unreadable_reasons == []
    assert report.echo_failures == [] and report.echoes >= 5
    assert 0 < report.worker_rss_peak_mib < RSS_BOUND_MIB
    assert report.good_delivered
