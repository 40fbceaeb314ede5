"""LabEnd: a small orders service that uses labotel the way a real service would."""
