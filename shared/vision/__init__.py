"""Backbones, preprocessing, embedding, training and the SVM router."""
