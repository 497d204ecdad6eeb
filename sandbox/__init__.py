"""Stand-ins for the third parties orderfleet talks to, and synthetic data to feed it.

Real HTTP servers for a shipping carrier (``sandbox.carrier``) and a store
(``sandbox.storefront``), and deterministic order generators (``sandbox.synthetic``,
``sandbox.fraud_streams``) for the demo, the benchmarks and the tests. Nothing in the fleet's
own rooms (``domain``, ``tasks``) imports this package; it imports no ``tasks`` or ``workers``.
"""
