# SPDX-License-Identifier: Apache-2.0
"""Deprecated name of `dinov2_eqcoh.method.config` (moved in 0.2); kept so that old imports, configs and commands work."""

from dinov2_eqcoh._moved import alias

alias(__name__, "dinov2_eqcoh.method.config")
