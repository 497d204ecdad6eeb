"""The fraud triple check: address validation, payment behaviour, customer profile.

* :mod:`domain.fraud.address`: required fields and postal codes per country, regions, PO boxes,
  phone numbers, billing vs shipping country;
* :mod:`domain.fraud.payment`: AVS and CVV results, payment attempts;
* :mod:`domain.fraud.velocity`: card, e-mail, IP and address counts over sliding windows in
  Redis, shared by every worker;
* :mod:`domain.fraud.profile`: new vs returning customer, addresses and cards never used, value
  against history, disposable e-mail, IP country;
* :mod:`domain.fraud.engine`: the signals summed into a 0-100 score and a verdict.

The stage itself (one micro-batch per task) is ``tasks/fraud.py``.
"""

from domain.fraud.engine import Context, Verdict, assess, collect_signals, decide
from domain.fraud.signals import Signal

__all__ = ["Context", "Signal", "Verdict", "assess", "collect_signals", "decide"]
