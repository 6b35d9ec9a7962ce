"""Protocol engines: parameter estimation and key-length bounds for decoy-state BB84, E91 (CHSH) and CV-QKD.

Everything here is pure computation (no I/O, no randomness): counts in, bounds and decisions out. The
simulator (`qkdd.hal.sim`, `qkdctl sim run`) and the link pipeline call these functions; `qkdctl sim rate`
prints them. Each formula cites its paper and equation next to the code.

Public API (import from the defining module):

qkdd.protocols.channel          analytic weak-coherent-pulse channel (LMC/MQZL model)
    ChannelParams(distance_km, alpha_db_per_km, eta_bob, y0, e_det, f_ec, q, mu, nu, p_afterpulse)
                                validated; bad values raise ValueError naming the parameter.
                                Defaults: GYS parameters of Ma-Qi-Zhao-Lo Table I.
    .transmittance              eta = eta_bob 10^(-alpha L/10)
    gain(channel, k), error_gain(channel, k), qber(channel, k)      Q_k, E_k Q_k, E_k per pulse
    yield_n(channel, n), error_rate_n(channel, n), poisson(n, mean)

qkdd.protocols.bb84             asymptotic reference rates (never the key length)
    key_rate(channel, decoy) -> AsymptoticRate      decoy in {"none", "vacuum-weak", "infinite"}
    optimize_mu(channel, decoy) -> AsymptoticRate   mu maximising the rate (nu fixed)
    max_distance_km(channel, decoy)                 cutoff distance
    vacuum_weak_bounds(mu, nu, gain_signal, gain_decoy, qber_decoy, y0) -> SinglePhotonBounds
    no_decoy_bounds(mu, gain_signal, qber_signal) -> SinglePhotonBounds
    gllp_key_rate(q, f_ec, gain_signal, qber_signal, q1, e1)

qkdd.protocols.bb84_finite      THE key length: Lim-Curty-Walenta-Xu-Zbinden 2014 finite-key bound
    DecoySettings(mu_signal, mu_decoy, mu_vacuum, p_signal, p_decoy, q_x)
    Tally(detections, errors); DecoyCounts(pulses_sent, x=(signal, decoy, vacuum), z=(...))
    DecoyCounts.from_mapping({"pulses_sent", "X": {"signal": {"detections", "errors"}, ...}, "Z": ...})
    finite_key_length(counts, settings, eps_sec=1e-10, eps_cor=1e-15, f_ec=1.16, ec_leak_bits=None,
                      phase_error_tolerance=0.5) -> FiniteKeyResult
        .key_length_bits, .abort, .abort_reason, .y1_lower, .e1_upper, .phase_error_upper, .s_x1_lower, ...
    expected_counts(channel, settings, pulses_sent), pulses_for_block(channel, settings, n_x)
    observed_statistics(counts, settings) -> {"X"|"Z": {"signal"|"decoy"|"vacuum": {gain, qber, ...}}}

qkdd.protocols.bb84_design      choosing decoy settings for a link (Lim Sec. IV evaluation)
    expected_finite_rate(channel, settings, n_x, eps_sec | kappa) -> FiniteRate
    optimize_settings(channel, n_x, mu_vacuum, eps_sec | kappa) -> FiniteRate (optimal settings)
    max_distance_km_finite(channel, n_x, ...)

qkdd.protocols.e91              E91/BBM92 with a CHSH test (settings in the module docstring)
    Correlation(agree, disagree); E91Counts(chsh=(4 x Correlation in CHSH_TERMS order), key_z, key_x,
                                            pairs_emitted); E91Counts.from_mapping({...})
    ALICE_ANGLES_DEG, BOB_ANGLES_DEG, CHSH_TERMS, KEY_PAIRS   the settings the simulator must use
    chsh_estimate(counts, eps_pe) -> ChshEstimate(s, sigma, s_lower)
    e91_key_length(counts, eps_sec, eps_cor, eps_pe, f_ec, ec_leak_bits, device_independent) -> E91Result
        .key_length_bits, .abort, .abort_reason, .chsh_s, .chsh_s_lower, .qber_z, .qber_x, ...
    werner_statistics(V) -> (S, QBER), shor_preskill_rate(Q), device_independent_rate(S, Q)

qkdd.protocols.cvqkd            GG02, reverse reconciliation, collective attacks (asymptotic)
    CvParams(modulation_variance, distance_km, alpha_db_per_km, excess_noise, eta_det, electronic_noise,
             beta, detection) ; gg02_key_rate(params) -> CvRate(mutual_information, holevo_bound, ...)
    gg02_terms(params, transmittance, excess_noise): the same at a given (T, xi)

qkdd.protocols.cvqkd_finite     GG02 finite size (Leverrier, Grosshans & Grangier, PRA 81, 062343 (2010))
    estimate(params, x, y, eps_pe) -> Estimate(t_hat, sigma2_hat, transmittance_min, excess_noise_max, snr, ...)
    key_length(params, estimate, key_symbols, reconciled_bits, leak_bits) -> FiniteKey ; finite_size_rate(...)

qkdd.protocols.cli              `qkdctl sim rate` (registered in qkdd/ctl.py)

qkdd.protocols.entropy
    binary_entropy(p), secure_fraction_asymptotic(qber) = max(0, 1 - 2h(Q))  (the seed's metric only)
"""
