"""The Ascendra operator: AscendraService resources reconciled into LP/HP runtime pods, a router,
Services and RBAC (kopf)."""
