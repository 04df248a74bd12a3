"""The learned deadline predictor: observations of queued requests, the XGBoost models trained
on them and on engine profiles, and their evaluation."""
