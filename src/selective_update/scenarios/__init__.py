"""Scenarios where the study meets a real use.

    new_class         pretrain on digits 0-8, then learn class 9 keeping outputs 0-8
    new_class_report  its answer, front table and trade-off figure
"""
