-- A second database for Optuna's study, beside MLflow's (runs once, on an empty volume).
CREATE DATABASE optuna;
